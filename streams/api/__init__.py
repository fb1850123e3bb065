"""The read API and the profile pages: ``badgestream api``, FastAPI on uvicorn over the award database.

``app`` builds the application (routes, auth, errors, metrics), ``views`` turns database rows
into what the API and the pages show, ``cache`` keeps the expensive aggregates (holders,
rankings, the catalog) for a few seconds, ``emblems`` draws each badge's SVG.
"""

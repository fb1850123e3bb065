"""The award database: tables, migrations, reads and writes."""

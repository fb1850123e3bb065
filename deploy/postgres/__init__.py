"""A throwaway PostgreSQL cluster from the OS packages, for development and tests."""

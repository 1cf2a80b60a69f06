"""MongoDB -> PostgreSQL: migrations, transforms and the incremental run."""

"""The local host and its embedded servers: for laptops and tests, never deployed."""

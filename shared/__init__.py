"""salespredict's logic: settings, schemas, stores and services that the functions call."""

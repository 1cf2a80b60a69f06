"""The function folders; each holds one Blueprint that function_app.py registers."""

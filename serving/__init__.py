"""Ray Serve application for the protector (see serving/app.py)."""

"""The built-in mocker engine (simulated, no GPU); see ``engine.py``."""

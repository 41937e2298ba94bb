"""`python -m embedded up|down|status` (embedded/launch.py)."""

from embedded.launch import main

main()

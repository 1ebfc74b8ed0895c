"""`python -m bnexp.sweep`: see bnexp/sweep/app.py."""

from bnexp.sweep.app import main

if __name__ == "__main__":
    main()

"""`python -m bnexp.dashboard --entity E --project P [--study-name S] [--dry-run]`: a W&B Report comparing
stability across variants (built in bnexp/tracking/dashboard.py)."""

from bnexp.tracking.dashboard import main

if __name__ == "__main__":
    main()

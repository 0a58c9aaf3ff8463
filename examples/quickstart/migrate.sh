#!/bin/sh
# Quickstart pre-rollout hook, run by gitopsd before a rollout's first step (no shell, a
# cleared environment, its own empty folder). It stands in for a database migration: it only
# says what it would migrate, from the GITOPSD_* variables gitopsd passes. Like every hook it
# must be safe to run again.
# Usage: migrate.sh LOG_FILE
short() { printf '%s' "$1" | cut -c1-12; }
from=$(short "$GITOPSD_PREVIOUS_REVISION")
echo "migration ($GITOPSD_HOOK): $GITOPSD_ENVIRONMENT schema migrated for $(short "$GITOPSD_REVISION") (from ${from:-an empty database})" >> "$1"

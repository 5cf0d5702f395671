"""The supervisor process: configuration, schedules, dispatch, scoreboard and the store."""

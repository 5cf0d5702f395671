"""Worker processes and the sandbox each run executes in."""

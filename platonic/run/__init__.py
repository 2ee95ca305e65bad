"""Running the stages: command-line mains, the argument groups they share, the exit codes of a
script, and the Ray runner. Nothing in the library imports this package."""

"""Running the stages: command-line mains, the argument groups they share, the exit codes of a
script, and the Ray runner. It imports the stages; no stage, nor anything below them, imports it
(the studies above, `captions` and `mmimdb`, use its argument groups and runner)."""

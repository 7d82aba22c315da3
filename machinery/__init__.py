"""The machinery the commands use: not the method of the paper, but what runs it (see README, "Layout")."""

"""Fast tests of single modules, in-process: no daemon, no model files."""

"""The load in force: its Runtime, set by plugin_load() and cleared by
plugin_unload().  Each load imports the package afresh (delegate.so drops
it from sys.modules first), so this is one load's, never shared with the
next."""

runtime = None

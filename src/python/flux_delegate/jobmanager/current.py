"""The load in force, set by plugin_load() and cleared by plugin_unload():
the module delegate.so provides (its jobtap calls) and the Runtime."""

jobtap = None
runtime = None

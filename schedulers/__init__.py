"""Schedulers, one module each, like the kernel's ip_vs_<name>.c.

A module defines a subclass of schedulers._base.Scheduler with a `name` and
decorates it with lvs.registry.register_scheduler; lvs.registry imports
`schedulers.<name>` the first time a service asks for that name, so a new
scheduler is one new file here and nothing else.
"""

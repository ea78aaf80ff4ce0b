"""Configuration as plain typed data.

`build(cls, mapping, source)` turns a YAML mapping into a (nested) dataclass, validating types,
ranges and choices in one place; `load_yaml(path)` reads a YAML file safely with clear errors (a repeated
key or an empty file is an error); `safe_load(text)` is the same loader for a string.
The simulation core only ever sees the dataclasses.
"""
from bayesim.config.schema import apply_overrides, build, load_yaml, safe_load, spec, to_dict  # noqa: F401

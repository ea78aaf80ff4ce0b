"""Configuration as plain typed data.

`build(cls, mapping, source)` turns a YAML mapping into a (nested) dataclass, validating types,
ranges and choices in one place; `load_yaml(path)` reads a YAML file safely with clear errors.
The simulation core only ever sees the dataclasses.
"""
from bayesim.config.schema import apply_overrides, build, load_yaml, spec, to_dict  # noqa: F401

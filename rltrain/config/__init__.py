"""The configuration schema: one dataclass per config-group option, registered in Hydra's
ConfigStore, plus ``validate()`` for the rules that span fields.

Modules: ``algo`` / ``schemas`` (the dataclasses), ``fields`` (``one_of`` / ``bounded``: a field's
valid names or range, written next to it and checked naming its key), ``options`` (the ONE option
table, the ConfigStore, the loops map), ``rules`` (validate: the fields' checks, then the rules that
span fields). Everything is re-exported here.

Every field carries a docstring comment. Hydra rejects unknown keys and wrong types against these
schemas; ``rltrain.cli`` turns those rejections into messages that list the valid keys. Defaults
live here (and in ``conf/``), never in code further down.
"""
from rltrain.config.algo import *  # noqa: F401,F403
from rltrain.config.errors import ConfigError  # noqa: F401
from rltrain.config.options import (LOOPS, OPTIONS, SINGLE_SCHEMA,  # noqa: F401
                                    option_kwargs, option_schema, register_configs)
from rltrain.config.rules import schema_keys, validate  # noqa: F401
from rltrain.config.schemas import *  # noqa: F401,F403

"""Reading a config source: one read of the file's bytes and one guarded parser per format.

``load_source`` is the only place confledger turns a file into a config body. It reads the bytes once
(capped, so a huge file is never read whole), hashes exactly those bytes and parses exactly those bytes,
so the ``input_sha256`` in ``config.loaded`` / ``config.load_failed`` always describes what was parsed,
even while an editor or a deploy tool rewrites the file underneath.

Modules: ``reading`` (``load_source``, the capped read, the dispatch), one per format (``json_source``,
``yaml_source``, ``toml_source``, ``env_source``), ``tree`` (the checks every body passes whatever its
format) and ``limits`` (the limits, the reason codes and the naming rules shared by all).

Every refusal is a :class:`~confledger.store.errors.SourceError` whose ``code`` is one of
:data:`REASON_CODES` and whose message is one line written here. Config files hold secrets, so no message
ever carries document text or a parser's own message (PyYAML's, for one, quotes a snippet of the
document): only line/column numbers, byte offsets, limits, and key names that look like plain identifiers.

Reason codes
    ``unsupported_format``  the file name has no known suffix (.json, .yaml/.yml, .toml, .env)
    ``not_found``           no such file
    ``not_a_file``          a directory, FIFO, device, ...
    ``permission_denied``   the process may not read it
    ``read_error``          any other OS error while opening or reading
    ``too_large``           more than ``max_bytes``
    ``empty``               0 bytes or only whitespace (after a grace period if ``expect_content``)
    ``invalid_utf8``        not UTF-8; the message names the byte offset
    ``syntax_error``        the parser refused it; line/column when known
    ``duplicate_key``       a key (or .env variable) defined twice in one mapping
    ``non_finite_number``   NaN or an infinity (JSON has no such numbers; canonical hashing refuses them)
    ``too_deep``            more than :data:`MAX_DEPTH` nested containers
    ``integer_too_long``    an integer with more than :data:`MAX_INT_DIGITS` decimal digits
    ``yaml_tag_refused``    a YAML tag that would construct an object (``!!python/...``, ``!custom``)
    ``alias_bomb``          YAML aliases that expand too far, are too many, or refer to themselves
    ``not_a_mapping``       the top level is not an object/mapping
    ``non_string_key``      a mapping key that is not a string (YAML ``1: x``, ``null: x``, ``on: x``)
    ``invalid_value``       a value with no JSON form (YAML ``!!binary``, ``!!set``, an impossible date)

Value choices the caller should know
    * Dates, datetimes and times (YAML timestamps, TOML date/time values) become ISO 8601 strings
      (``datetime.isoformat()``): a config body is JSON, and a string is friendlier than a refusal.
    * PyYAML resolves YAML 1.1 scalars: ``yes``/``no``/``on``/``off`` are booleans. As keys they are
      therefore refused with ``non_string_key`` rather than silently becoming ``True``.
      Likewise YAML 1.1 reads ``1:30`` as the integer 90 and ``0777`` as octal; quote such values.
    * A leading UTF-8 byte order mark is ignored (Windows editors write one).
    * ``empty`` is about bytes (nothing but whitespace). A YAML file holding only comments, or ``~``,
      parses to null and is ``not_a_mapping``; an ``.env`` file of only comments is ``{}``.
    * ``.env`` files give a flat ``dict[str, str]``, keys exactly as written (no lowercasing, no
      ``A__B`` nesting): simple and predictable, and validation models can map them. See
      :func:`~confledger.store.sources.env_source.parse_env` for the accepted syntax.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from confledger.store.lazy import lazy_exports
from confledger.store.sources.limits import (
    DEFAULT_MAX_BYTES,
    MAX_DEPTH,
    MAX_INT_DIGITS,
    MAX_YAML_ALIASES,
    REASON_CODES,
    SUPPORTED_FORMATS,
    YAML_EXPANSION_FACTOR,
    YAML_EXPANSION_FLOOR,
)

if TYPE_CHECKING:
    from confledger.store.sources.reading import LoadedSource, detect_format, load_source

# The reader and its parsers (PyYAML, tomllib) are imported on first use: the settings model names
# DEFAULT_MAX_BYTES, and a command line that never reads a source (``confledger verify``) would
# otherwise pay for every parser at start-up.
__getattr__ = lazy_exports(
    __name__,
    dict.fromkeys(("LoadedSource", "detect_format", "load_source"), "confledger.store.sources.reading"),
)


__all__ = [
    "DEFAULT_MAX_BYTES",
    "MAX_DEPTH",
    "MAX_INT_DIGITS",
    "MAX_YAML_ALIASES",
    "REASON_CODES",
    "SUPPORTED_FORMATS",
    "YAML_EXPANSION_FACTOR",
    "YAML_EXPANSION_FLOOR",
    "LoadedSource",
    "detect_format",
    "load_source",
]

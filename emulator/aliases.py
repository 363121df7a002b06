"""Parameter aliases in `$filter` (`…eq @message&@message='CreateMultiple'`).

The documented bulk-message probe (base §10.3) passes its values as aliases. Each `@name` of the
`$filter` text (outside string literals) is replaced by the text of its `@name=` option, as OData
defines it; an alias without a value is `null`. The alias options are removed afterwards. This is
the one place aliases are handled, to be replaced by a general implementation later.
"""

from __future__ import annotations

import re

_TOKEN = re.compile(r"'(?:[^']|'')*'|@([A-Za-z_]\w*)")


def resolve(options: dict[str, str]) -> dict[str, str]:
    """`options` without the `@name` options, their values written into `$filter`."""
    values = {name: value for name, value in options.items() if name.startswith("@")}
    resolved = {name: value for name, value in options.items() if name not in values}
    if "$filter" in resolved:
        resolved["$filter"] = _TOKEN.sub(
            lambda m: m.group(0) if m.group(1) is None else values.get(f"@{m.group(1)}", "null"),
            resolved["$filter"],
        )
    return resolved

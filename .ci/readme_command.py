"""Print the one command of a README section's first ```bash block: `python .ci/readme_command.py Install`.

CI runs exactly what the README tells a new user to run; a section whose block holds anything but one command
is an error, so the README cannot drift from what CI checks."""

import re
import sys
from pathlib import Path

section = sys.argv[1]
text = Path(__file__).resolve().parents[1].joinpath("README.md").read_text(encoding="utf-8")
match = re.search(rf"^## {re.escape(section)}\b.*?^```bash\n(.*?)^```", text, flags=re.M | re.S)
if match is None:
    sys.exit(f"README.md: no ```bash block under '## {section}'")
lines = [line for line in match.group(1).splitlines() if line.strip() and not line.lstrip().startswith("#")]
if len(lines) != 1:
    sys.exit(f"README.md: the ```bash block under '## {section}' must hold one command, not {len(lines)}")
print(lines[0].strip())

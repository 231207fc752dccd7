"""The click front ends `spa-data` and `spa-train`; the folder ``cli/`` installs as the package ``spa_cli``."""

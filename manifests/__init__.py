"""The subset recipes shipped with spa, installed as the package data ``spa_data.manifests``
(read through ``importlib.resources`` by ``spa_data.recipes``)."""

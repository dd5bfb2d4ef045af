"""Built-in search spaces (YAML), installed as ``robusttune.search_spaces``; see robusttune/search/space.py."""

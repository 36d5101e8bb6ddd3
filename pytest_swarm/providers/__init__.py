"""Where the swarm's nodes come from. ``registry`` names every provider and builds one; each
provider is one module beside it (uml's parts are ``uml_*``), sharing ``base`` (the contract,
swarm formation), ``engines`` (engine clients) and ``local_nodes`` (nodes this machine runs)."""

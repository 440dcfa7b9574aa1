"""Registry-aware access control: the access policy file (``policy``). Pure: it reads
its files when asked to load and answers questions after that."""

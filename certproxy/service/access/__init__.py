"""Registry-aware access control: the access policy file (``policy``) and the registry
API read as actions on repositories (``api``). Both are pure: the policy reads its
files when asked to load, the API reader looks at a request line's bytes."""

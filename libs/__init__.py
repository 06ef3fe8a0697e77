"""Code shared by tetsu services: the rpc library and the command line."""

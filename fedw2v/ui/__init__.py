"""What a person sees: the console, tables (`render`) and the live display of a federated run (`progress`)."""

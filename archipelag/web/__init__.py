"""Web: the web app people use in a browser — its pages, served by the coordinator beside the API."""

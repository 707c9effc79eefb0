"""The SMART apps the gateway serves at ``/apps``: the launch page and OHIF (``smart_apps/``)."""

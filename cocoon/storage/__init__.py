"""The sandbox's shared directory: layout, bind mounts, and the fs daemon."""

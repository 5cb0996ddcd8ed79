"""Code shared by Pressline's functions and workers."""

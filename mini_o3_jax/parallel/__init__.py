"""Device mesh construction and the logical-axis -> mesh-axis rule table."""

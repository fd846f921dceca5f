"""⑤ the run of a request: call the decided tier, verify the answer, escalate or spill until one
passes. The run returns its attempts; the edge (server, library caller) records them."""

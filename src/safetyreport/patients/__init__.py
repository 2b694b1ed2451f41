"""Each patient's history (issue 15): the course of treatment sessions and the timeline."""

"""Analysis: facts about a recurrence that choose its strategy."""

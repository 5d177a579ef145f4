"""Mi-Jack Power In-Lock enterprise app: message types, topics, simulator."""

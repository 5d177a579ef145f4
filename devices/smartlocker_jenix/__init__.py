"""SmartLocker by Jenix / IOTSoft smart-locker cabinets: message types, topics, simulator."""

"""VAU-Bench annotations -> samples, video reading, frame samplers, collate, DataModules."""

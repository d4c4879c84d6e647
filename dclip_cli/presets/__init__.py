"""Domain presets and the plugin machinery that discovers them."""

"""tetsu's services: api, scheduler, conductor and netctl, each its own process."""

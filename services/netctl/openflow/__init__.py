"""netctl's OpenFlow 1.3 controller on os-ken: the flows a switch needs (``flows``, pure),
the os-ken plumbing (``controller``) and the switch backend tying them to netctl
(``switch.OpenFlowSwitch``). Importing this package loads nothing of os-ken: only
``controller`` and ``switch`` do."""

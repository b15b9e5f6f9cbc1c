# placeholder, replaced by the codec work

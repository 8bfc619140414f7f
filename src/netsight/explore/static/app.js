// netsight explore

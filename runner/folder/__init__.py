"""Reading and checking the migrations folder: names, layouts, statements, what may run where."""

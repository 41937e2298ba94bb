"""Static files of the trainer's dashboard (served by services/trainer/api/routes/dashboard.py):
index.html with dashboard.js and dashboard.css, and login.html. Plain HTML, CSS and JavaScript,
no build step and nothing loaded from elsewhere. A package so its files ship as package data."""

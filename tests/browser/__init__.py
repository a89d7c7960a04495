"Helpers of the browser test: a throwaway JupyterLab and the steps a person takes in it."

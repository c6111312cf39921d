// Original file: cri-api/api.proto


export interface RemoveContainerResponse {
}

export interface RemoveContainerResponse__Output {
}
